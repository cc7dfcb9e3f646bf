//! Tenantry proxy core.
