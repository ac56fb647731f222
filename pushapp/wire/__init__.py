"""The wire: Engine.IO over websockets and long polls, and the HTTP server under it.

Owns the Engine.IO websocket transport (``transport``) and its hand-written framing
(``frames``), the gunicorn worker and its HTTP/websocket handler (``worker``), python-socketio's
client manager cut to sids (``manager``), the client's address behind trusted proxies
(``addresses``), and what one connection may cost (``limits``: its event rate, its log lines,
handshakes per address), since a connection here is the Engine.IO session a client holds.

May import: pushapp's leaves only (config, internals, ticker, ops.metrics). The wire knows
nothing of chat, users, Redis or the store: whatever a packet means is the sockets' business
(tests/test_layers.py holds this).
"""
