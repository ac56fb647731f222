"""The ingest: messages from business servers, stored, then handed to the worker that holds
each recipient.

Owns the pub/sub listener of the business channels and of this node's signal channel
(``listener``), the ingest lease that lets one worker store what every worker hears, and
this node's heartbeat (``lease``), the durable inbox stream's consumer (``inbox``), what
is done with messages by size (``oversized``), and the routing (``routing``): store, then
deliver here or signal the node holding the recipient. The HTTP API and direct client
chats enter through the same Router.

May import: the sockets (delivery, and the signals between workers, which delivery sends
and receives too), the store, and the leaves. Nothing above it but the app and the HTTP
API imports it (tests/test_layers.py holds this).
"""
