"""The HTTP endpoints, as transport-neutral handlers: each takes an
``auth.Request`` (and a body) and returns a ``responses.Response``, so both
ports answer byte for byte alike. ``router.Router`` says which one answers.

They build on the services and the hub core; none imports a transport.
"""
