"""The same preprocessing as benches/preprocess_throughput.rs, written the straightforward
pandas/numpy way (vectorised), on the NPZ that bench wrote. Prints one RESULT line.
usage: preprocess_pandas.py data.npz"""
import sys, time
import numpy as np, pandas as pd

ASSETS, DEPTH, L, WINDOWS, H = 7, 10, 5, (10, 60), 30

def features(z, a, origin):
    ts = z[f"a{a}/ts"]
    bp, bq, ap, aq = (z[f"a{a}/{n}"] for n in ("bid_px", "bid_qty", "ask_px", "ask_qty"))
    idx = pd.to_datetime(ts, unit="ms", utc=True)
    # align onto the 10 s grid with forward fill up to 60 s
    grid = pd.date_range(idx[0].ceil("10s"), idx[-1], freq="10s")
    df = pd.DataFrame(np.hstack([bp, bq, ap, aq]), index=idx).reindex(grid, method="ffill", tolerance=pd.Timedelta("60s"))
    v = df.to_numpy()
    bp, bq, ap, aq = v[:, :DEPTH], v[:, DEPTH:2*DEPTH], v[:, 2*DEPTH:3*DEPTH], v[:, 3*DEPTH:]
    mid = (bp[:, 0] + ap[:, 0]) / 2
    out = {
        "spread": (ap[:, 0] - bp[:, 0]) / mid * 1e4,
        "vimb": (bq[:, 0] - aq[:, 0]) / (bq[:, 0] + aq[:, 0]),
        "dimb": (bq[:, :L].sum(1) - aq[:, :L].sum(1)) / (bq[:, :L].sum(1) + aq[:, :L].sum(1)),
        "micro": ((bp[:, 0] * aq[:, 0] + ap[:, 0] * bq[:, 0]) / (bq[:, 0] + aq[:, 0]) - mid) / mid * 1e4,
    }
    m, depth = pd.Series(mid), pd.Series(bq[:, :L].sum(1) + aq[:, :L].sum(1))
    for w in WINDOWS:
        out[f"pm{w}"] = np.log(m / m.shift(w)).to_numpy() * 1e4
    for w in WINDOWS:
        out[f"vm{w}"] = np.log(depth / depth.shift(w)).to_numpy()
    f = pd.DataFrame(out, index=grid)
    lv = np.hstack([(bp - mid[:, None]) / mid[:, None] * 1e4, np.log1p(bq), (ap - mid[:, None]) / mid[:, None] * 1e4, np.log1p(aq)])
    return pd.concat([f, pd.DataFrame(lv, index=grid)], axis=1), mid, grid

def main():
    z = dict(np.load(sys.argv[1]))
    steps = len(z["a0/ts"])
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        parts, mids, grid = [], None, None
        for a in range(ASSETS):
            f, mid, g = features(z, a, z["a0/ts"][0])
            parts.append(f.add_prefix(f"a{a}_"))
            if a == 0:
                mids, grid = mid, g
        X = pd.concat(parts, axis=1)
        t = grid.hour * 3600 + grid.minute * 60 + grid.second
        tf = {"h_sin": np.sin(2*np.pi*t/86400), "h_cos": np.cos(2*np.pi*t/86400),
              "d_sin": np.sin(2*np.pi*(grid.day_of_week + t/86400)/7), "d_cos": np.cos(2*np.pi*(grid.day_of_week + t/86400)/7),
              "m_sin": np.sin(2*np.pi*(grid.minute*60+grid.second)/3600), "m_cos": np.cos(2*np.pi*(grid.minute*60+grid.second)/3600),
              "days": (grid - grid[0]).total_seconds() / 86400}
        sess = np.select([grid.hour < 8, grid.hour < 14], [0, 1], 2)
        for s in range(3):
            tf[f"s{s}"] = (sess == s).astype(float)
        X = pd.concat([X, pd.DataFrame(tf, index=grid)], axis=1)
        m = pd.Series(mids)
        change = ((m.shift(-H) - m) / m * 100).to_numpy()
        labels = np.digitize(change, [-0.05, 0.05])
        n_train = int(len(X) * 0.7)
        mu, sd = X.iloc[:n_train].mean(), X.iloc[:n_train].std().replace(0, 1)
        Xs = ((X - mu) / sd).to_numpy(dtype=np.float64)
        best = min(best, time.perf_counter() - t0)
    print(f"RESULT impl=pandas-{pd.__version__} steps={steps} seconds={best:.3f} steps_per_s={steps/best:.0f} cols={Xs.shape[1]} labels={np.bincount(labels[~np.isnan(change)])}")

if __name__ == "__main__":
    main()
