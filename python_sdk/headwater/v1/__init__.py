"""Generated code for the ``headwater.v1`` wire contract (see proto/headwater/v1/).

Do not edit: regenerate with ``make proto``; a test fails when these files are stale.
"""
