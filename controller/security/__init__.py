"""Cluster security: certificates (pki), credentials on disk (files), tokens and roles
(tokens, roles), who is calling (principal), the authorization interceptor (authz) and the
audit trail (audit)."""
