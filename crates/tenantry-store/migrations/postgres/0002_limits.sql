-- Issue 4: route kinds and rate limits, tenant LLM policies. JSON is TEXT; NULL means the
-- default (an `http` route using its plan's rate limit; a tenant without restrictions).
ALTER TABLE routes ADD COLUMN kind TEXT;
ALTER TABLE routes ADD COLUMN ratelimit TEXT;
ALTER TABLE tenants ADD COLUMN policy TEXT;
