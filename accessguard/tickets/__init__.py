"""Tickets and the stores that hold them (files, PostgreSQL, HTTP)."""
