"""The sockets: what the clients' Socket.IO events mean, and delivery out to them.

Owns the events (``events``: login, chat, acks, their checks), JWT logins (``identity``),
each socket's state and the registry of them by sid and user (``connections``, a leaf),
delivery from the store to sockets (``delivery``), the resend and push timers of
unacked deliveries (``ack_timers``), and the signals between workers (``signals``: built
and read there only; it lives here because delivery both sends a kick and receives them
all).

May import: the wire (the transport's sockets, limits, addresses), the store, and the
leaves. Not the ingest: a client's ``CHAT_FILTER=direct`` chat goes to the ingest's Router,
which the app hands to ``Events`` as a function, so data flows one way (event in, store,
delivery out) and the ingest may call delivery (tests/test_layers.py holds this).
"""
