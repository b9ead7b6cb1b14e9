"""The audience wing: subscribers, CSV imports, suppression, addresses."""
