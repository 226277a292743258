"""taskledger's application: the service (use cases, access policy, idempotency) and its HTTP
adapter (``api.app.create_app``)."""
