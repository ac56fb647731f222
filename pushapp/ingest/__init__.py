"""The ingest: messages from business servers, stored, then handed to the worker that holds
each recipient.

Owns the pub/sub listener of the business channels and of this node's signal channel
(``listener``, with the ingest lease that lets one worker store what every worker hears),
the durable inbox stream (``inbox``), and the routing (``routing``): store, then deliver
here or signal the node holding the recipient. The HTTP API and direct client chats enter
through the same Router.

May import: the sockets (delivery, to hand over what was stored for this worker's
sockets), the store, and the leaves. Nothing above it but the app and the HTTP API imports
it (tests/test_layers.py holds this).
"""
