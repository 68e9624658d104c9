"""Tenant workflow bundles: one folder per bundle. Copy one to start your own."""
