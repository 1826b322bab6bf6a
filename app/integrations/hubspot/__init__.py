"""HubSpot: the CRM client (the only importer of `hubspot`) and its errors, as the API
answers them."""
