"""Users' own receivers: project webhooks, custom tools, and the SSRF guard both go through."""
