-- Issue 5: per-tenant and per-route WAF settings. JSON is TEXT; NULL means the default (the
-- plan's level, blocking, no exclusions; a route follows its tenant).
ALTER TABLE tenants ADD COLUMN waf TEXT;
ALTER TABLE routes ADD COLUMN waf TEXT;
