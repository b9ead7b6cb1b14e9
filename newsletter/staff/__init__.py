"""Staff: accounts, roles and what each may do, console sessions and API tokens.

The console (``web/admin``) and the API (``web/api``) ask this wing who is calling
and whether their role allows the action; the CLI manages the accounts.
"""
