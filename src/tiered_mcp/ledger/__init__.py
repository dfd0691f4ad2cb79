"""The ledger: its interface, the SQL both backends share, SQLite, PostgreSQL and named migrations."""
