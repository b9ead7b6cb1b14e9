"""The staff console under /admin: server-rendered pages over the service layer,
each guarded by one permission (``newsletter.staff.access``)."""
