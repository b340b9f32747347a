-- Reference scenario schema for PostgreSQL (shared/scenario.md), schema public.
-- Idempotent: drops everything it creates, then recreates it. Seed: seed.sql.

DROP FUNCTION IF EXISTS public.get_customer_email(bigint);
DROP TABLE IF EXISTS public.payments CASCADE;
DROP TABLE IF EXISTS public.orders CASCADE;
DROP TABLE IF EXISTS public.reviews CASCADE;
DROP TABLE IF EXISTS public.account_flags CASCADE;
DROP TABLE IF EXISTS public.sales_metrics CASCADE;
DROP TABLE IF EXISTS public.products CASCADE;
DROP TABLE IF EXISTS public.sellers CASCADE;
DROP TABLE IF EXISTS public.customers CASCADE;
DROP TABLE IF EXISTS public.tickets CASCADE;
DROP SCHEMA IF EXISTS archive CASCADE;

CREATE TABLE public.customers (
    id          bigint PRIMARY KEY,
    name        text,
    email       text,
    phone       text,
    address     text,
    created_at  timestamptz
);

CREATE TABLE public.orders (
    id           bigint PRIMARY KEY,
    customer_id  bigint REFERENCES public.customers (id),
    status       text,
    total_cents  bigint,
    created_at   timestamptz
);

CREATE TABLE public.payments (
    id            bigint PRIMARY KEY,
    order_id      bigint REFERENCES public.orders (id),
    customer_id   bigint REFERENCES public.customers (id),
    amount_cents  bigint,
    card_last4    text,
    card_token    text
);

CREATE TABLE public.sellers (
    id             bigint PRIMARY KEY,
    name           text,
    contact_email  text
);

CREATE TABLE public.products (
    id           bigint PRIMARY KEY,
    seller_id    bigint,
    title        text,
    price_cents  bigint
);

CREATE TABLE public.reviews (
    id           bigint PRIMARY KEY,
    product_id   bigint REFERENCES public.products (id),
    customer_id  bigint REFERENCES public.customers (id),
    rating       int,
    body         text,
    hidden       boolean
);

CREATE TABLE public.sales_metrics (
    product_id     bigint,
    day            date,
    units          int,
    revenue_cents  bigint,
    top_keywords   text
);

CREATE TABLE public.account_flags (
    customer_id  bigint PRIMARY KEY,
    banned       boolean,
    reason       text
);

CREATE TABLE public.tickets (
    id           text PRIMARY KEY,
    assignee     text,
    kind         text,
    status       text,
    customer_id  bigint NULL,
    product_id   bigint NULL,
    opened_at    timestamptz,
    closed_at    timestamptz NULL
);

-- Attack fixture: a table of the same name in another schema (ft-other-schema).
CREATE SCHEMA archive;
CREATE TABLE archive.customers (
    id     bigint PRIMARY KEY,
    name   text,
    email  text
);
INSERT INTO archive.customers (id, name, email) VALUES
    (7, 'Archived-0007', 'old0007@archive.example'),
    (42, 'Archived-0042', 'old0042@archive.example');

-- Attack fixture: a user-defined function (fn-user-function).
CREATE FUNCTION public.get_customer_email(bigint) RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT email FROM public.customers WHERE id = $1 $$;
