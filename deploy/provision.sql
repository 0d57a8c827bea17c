-- Tandem: least-privilege roles and databases (tandem db provision --print).
-- Run as a superuser: psql -v ON_ERROR_STOP=1 -d postgres -f this-file.sql

-- tandem_orchestrator
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_orchestrator_owner') THEN CREATE ROLE "tandem_orchestrator_owner"; END IF; END $$;
ALTER ROLE "tandem_orchestrator_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_orchestrator_app') THEN CREATE ROLE "tandem_orchestrator_app"; END IF; END $$;
ALTER ROLE "tandem_orchestrator_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_orchestrator', 'tandem_orchestrator_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_orchestrator')
\gexec
ALTER DATABASE "tandem_orchestrator" OWNER TO "tandem_orchestrator_owner";
REVOKE ALL ON DATABASE "tandem_orchestrator" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_orchestrator" TO "tandem_orchestrator_app";
\connect "tandem_orchestrator"
ALTER SCHEMA public OWNER TO "tandem_orchestrator_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_orchestrator_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_orchestrator_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_orchestrator_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_orchestrator_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_orchestrator_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_orchestrator_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_orchestrator_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_orchestrator_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_orchestrator_app";
\connect postgres

-- tandem_inventory
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_inventory_owner') THEN CREATE ROLE "tandem_inventory_owner"; END IF; END $$;
ALTER ROLE "tandem_inventory_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_inventory_app') THEN CREATE ROLE "tandem_inventory_app"; END IF; END $$;
ALTER ROLE "tandem_inventory_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_inventory', 'tandem_inventory_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_inventory')
\gexec
ALTER DATABASE "tandem_inventory" OWNER TO "tandem_inventory_owner";
REVOKE ALL ON DATABASE "tandem_inventory" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_inventory" TO "tandem_inventory_app";
\connect "tandem_inventory"
ALTER SCHEMA public OWNER TO "tandem_inventory_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_inventory_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_inventory_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_inventory_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_inventory_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_inventory_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_inventory_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_inventory_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_inventory_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_inventory_app";
\connect postgres

-- tandem_payment
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_payment_owner') THEN CREATE ROLE "tandem_payment_owner"; END IF; END $$;
ALTER ROLE "tandem_payment_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_payment_app') THEN CREATE ROLE "tandem_payment_app"; END IF; END $$;
ALTER ROLE "tandem_payment_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_payment', 'tandem_payment_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_payment')
\gexec
ALTER DATABASE "tandem_payment" OWNER TO "tandem_payment_owner";
REVOKE ALL ON DATABASE "tandem_payment" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_payment" TO "tandem_payment_app";
\connect "tandem_payment"
ALTER SCHEMA public OWNER TO "tandem_payment_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_payment_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_payment_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_payment_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_payment_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_payment_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_payment_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_payment_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_payment_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_payment_app";
\connect postgres

-- tandem_shipping
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_shipping_owner') THEN CREATE ROLE "tandem_shipping_owner"; END IF; END $$;
ALTER ROLE "tandem_shipping_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_shipping_app') THEN CREATE ROLE "tandem_shipping_app"; END IF; END $$;
ALTER ROLE "tandem_shipping_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_shipping', 'tandem_shipping_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_shipping')
\gexec
ALTER DATABASE "tandem_shipping" OWNER TO "tandem_shipping_owner";
REVOKE ALL ON DATABASE "tandem_shipping" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_shipping" TO "tandem_shipping_app";
\connect "tandem_shipping"
ALTER SCHEMA public OWNER TO "tandem_shipping_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_shipping_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_shipping_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_shipping_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_shipping_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_shipping_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_shipping_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_shipping_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_shipping_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_shipping_app";
\connect postgres

-- tandem_acceptor_0
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_acceptor_0_owner') THEN CREATE ROLE "tandem_acceptor_0_owner"; END IF; END $$;
ALTER ROLE "tandem_acceptor_0_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_acceptor_0_app') THEN CREATE ROLE "tandem_acceptor_0_app"; END IF; END $$;
ALTER ROLE "tandem_acceptor_0_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_acceptor_0', 'tandem_acceptor_0_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_acceptor_0')
\gexec
ALTER DATABASE "tandem_acceptor_0" OWNER TO "tandem_acceptor_0_owner";
REVOKE ALL ON DATABASE "tandem_acceptor_0" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_acceptor_0" TO "tandem_acceptor_0_app";
\connect "tandem_acceptor_0"
ALTER SCHEMA public OWNER TO "tandem_acceptor_0_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_acceptor_0_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_acceptor_0_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_acceptor_0_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_acceptor_0_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_acceptor_0_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_acceptor_0_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_acceptor_0_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_acceptor_0_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_acceptor_0_app";
\connect postgres

-- tandem_acceptor_1
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_acceptor_1_owner') THEN CREATE ROLE "tandem_acceptor_1_owner"; END IF; END $$;
ALTER ROLE "tandem_acceptor_1_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_acceptor_1_app') THEN CREATE ROLE "tandem_acceptor_1_app"; END IF; END $$;
ALTER ROLE "tandem_acceptor_1_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_acceptor_1', 'tandem_acceptor_1_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_acceptor_1')
\gexec
ALTER DATABASE "tandem_acceptor_1" OWNER TO "tandem_acceptor_1_owner";
REVOKE ALL ON DATABASE "tandem_acceptor_1" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_acceptor_1" TO "tandem_acceptor_1_app";
\connect "tandem_acceptor_1"
ALTER SCHEMA public OWNER TO "tandem_acceptor_1_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_acceptor_1_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_acceptor_1_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_acceptor_1_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_acceptor_1_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_acceptor_1_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_acceptor_1_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_acceptor_1_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_acceptor_1_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_acceptor_1_app";
\connect postgres

-- tandem_acceptor_2
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_acceptor_2_owner') THEN CREATE ROLE "tandem_acceptor_2_owner"; END IF; END $$;
ALTER ROLE "tandem_acceptor_2_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_acceptor_2_app') THEN CREATE ROLE "tandem_acceptor_2_app"; END IF; END $$;
ALTER ROLE "tandem_acceptor_2_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_acceptor_2', 'tandem_acceptor_2_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_acceptor_2')
\gexec
ALTER DATABASE "tandem_acceptor_2" OWNER TO "tandem_acceptor_2_owner";
REVOKE ALL ON DATABASE "tandem_acceptor_2" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_acceptor_2" TO "tandem_acceptor_2_app";
\connect "tandem_acceptor_2"
ALTER SCHEMA public OWNER TO "tandem_acceptor_2_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_acceptor_2_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_acceptor_2_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_acceptor_2_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_acceptor_2_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_acceptor_2_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_acceptor_2_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_acceptor_2_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_acceptor_2_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_acceptor_2_app";
\connect postgres

-- tandem_orders
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_orders_owner') THEN CREATE ROLE "tandem_orders_owner"; END IF; END $$;
ALTER ROLE "tandem_orders_owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'owner_password';
DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tandem_orders_app') THEN CREATE ROLE "tandem_orders_app"; END IF; END $$;
ALTER ROLE "tandem_orders_app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
SELECT format('CREATE DATABASE %I OWNER %I', 'tandem_orders', 'tandem_orders_owner') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tandem_orders')
\gexec
ALTER DATABASE "tandem_orders" OWNER TO "tandem_orders_owner";
REVOKE ALL ON DATABASE "tandem_orders" FROM PUBLIC;
GRANT CONNECT ON DATABASE "tandem_orders" TO "tandem_orders_app";
\connect "tandem_orders"
ALTER SCHEMA public OWNER TO "tandem_orders_owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO "tandem_orders_app";
DO $$ DECLARE t record; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'tandem_orders_owner' LOOP EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.tablename, 'tandem_orders_owner'); END LOOP; END $$;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "tandem_orders_app";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "tandem_orders_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_orders_owner" IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "tandem_orders_app";
ALTER DEFAULT PRIVILEGES FOR ROLE "tandem_orders_owner" IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "tandem_orders_app";
\connect postgres
