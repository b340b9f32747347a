-- Reference scenario schema for SQLite (shared/scenario.md); booleans are INTEGER 0/1.
-- Idempotent: drops every table, then recreates it. Seed: seed.sql.

DROP TABLE IF EXISTS payments;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS reviews;
DROP TABLE IF EXISTS account_flags;
DROP TABLE IF EXISTS sales_metrics;
DROP TABLE IF EXISTS products;
DROP TABLE IF EXISTS sellers;
DROP TABLE IF EXISTS customers;
DROP TABLE IF EXISTS tickets;

CREATE TABLE customers (
    id          INTEGER PRIMARY KEY,
    name        TEXT,
    email       TEXT,
    phone       TEXT,
    address     TEXT,
    created_at  TEXT
);

CREATE TABLE orders (
    id           INTEGER PRIMARY KEY,
    customer_id  INTEGER REFERENCES customers (id),
    status       TEXT,
    total_cents  INTEGER,
    created_at   TEXT
);

CREATE TABLE payments (
    id            INTEGER PRIMARY KEY,
    order_id      INTEGER REFERENCES orders (id),
    customer_id   INTEGER REFERENCES customers (id),
    amount_cents  INTEGER,
    card_last4    TEXT,
    card_token    TEXT
);

CREATE TABLE sellers (
    id             INTEGER PRIMARY KEY,
    name           TEXT,
    contact_email  TEXT
);

CREATE TABLE products (
    id           INTEGER PRIMARY KEY,
    seller_id    INTEGER,
    title        TEXT,
    price_cents  INTEGER
);

CREATE TABLE reviews (
    id           INTEGER PRIMARY KEY,
    product_id   INTEGER REFERENCES products (id),
    customer_id  INTEGER REFERENCES customers (id),
    rating       INTEGER,
    body         TEXT,
    hidden       INTEGER
);

CREATE TABLE sales_metrics (
    product_id     INTEGER,
    day            TEXT,
    units          INTEGER,
    revenue_cents  INTEGER,
    top_keywords   TEXT
);

CREATE TABLE account_flags (
    customer_id  INTEGER PRIMARY KEY,
    banned       INTEGER,
    reason       TEXT
);

CREATE TABLE tickets (
    id           TEXT PRIMARY KEY,
    assignee     TEXT,
    kind         TEXT,
    status       TEXT,
    customer_id  INTEGER,
    product_id   INTEGER,
    opened_at    TEXT,
    closed_at    TEXT
);
