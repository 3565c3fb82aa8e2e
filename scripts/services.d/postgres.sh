# Sourced by scripts/test.sh: installs PostgreSQL from Debian's packages (once), starts it, and
# creates the test role and database for the data tests.
eval "$(bash scripts/postgres.sh)"
