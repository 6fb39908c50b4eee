"""The hub core: registry, subscriptions, the publication path, recovery, the
writers and their flusher, history, the publication codec and the counters.

It imports only the broker interface, the compiled core and the leaf modules;
services, endpoints and transports build on it (see ``hubbub.app``).
"""
