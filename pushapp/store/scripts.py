"""The Store's Lua scripts, each with what it takes and answers.

Each script is one atomic step on one user's keys (all in one Redis Cluster slot, see
pushapp.store.store) or on one gateway-wide key; the Store registers them
(``register_script``: EVALSHA, and the script itself once if Redis lost it) and is their
only caller. A comment above each names its KEYS and ARGV, in order, and what it returns.
``READ_FN`` is not a script: the read that ``READ`` and ``LOGIN`` share.
"""
from __future__ import annotations

# KEYS: per message its user's stream, presence and sent marks. ARGV: maxlen, ttl_ms,
# archive channel ('' for none), the marks' field (the kind), then one text per message,
# or a single text for all of them. Per message: appends it, bounded by MAXLEN, makes the
# stream live ttl_ms more, publishes it on the archive channel and, if the user has a
# socket, marks it as sent to it. Answers per message {id, the id marked as sent before
# it or false (none, or no socket), the node of the user's socket or false}, or, for a
# message whose stream key holds another type, that error alone. While a user has a
# socket every message stored is marked, and the reads move the mark up to what they
# read: the mark before a message is the newest id its socket may have had. (Reading the
# stream's newest entry instead was the script's costliest step: docs/benchmarks.md.)
APPEND = """
local maxlen, ttl, channel, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local shared = #ARGV == 5
local out = {}
for i = 1, #KEYS / 3 do
  local stream, presence, marks = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local raw = ARGV[shared and 5 or 4 + i]
  local id = redis.pcall('XADD', stream, 'MAXLEN', maxlen, '*', 'm', raw)
  if type(id) ~= 'string' then
    out[i] = id
  else
    redis.call('PEXPIRE', stream, ttl)
    if channel ~= '' then redis.call('PUBLISH', channel, raw) end
    local node = redis.pcall('HGET', presence, 'node')
    local prev = false
    if type(node) == 'string' then
      prev = redis.pcall('HGET', marks, kind)
      if type(prev) ~= 'string' then prev = false end
      redis.pcall('HSET', marks, kind, id)
    else
      node = false
    end
    out[i] = {id, prev, node}
  end
end
return out
"""

# Reading pending messages to send: the rows of a stream from ``start`` on, after how many
# of them were sent before (ids up to the kind's mark in ``marks``); the mark moves past
# them. A key that is not a stream answers -1 and no rows, and fails only its own read.
# Only logins, resends and deliveries that could not follow on from what a socket was
# sent read; a message stored for a socket that has everything before it is not read back.
READ_FN = """
local function before(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, bms = tonumber(ams), tonumber(bms)
  return ams < bms or (ams == bms and tonumber(aseq) <= tonumber(bseq))
end
local function read(stream, marks, start, count, kind, ttl)
  local rows = redis.pcall('XRANGE', stream, start, '+', 'COUNT', count)
  if rows.err then return {-1, {}} end
  if #rows == 0 then return {0, rows} end
  local mark = redis.call('HGET', marks, kind)
  local seen = 0
  if mark then
    for _, row in ipairs(rows) do
      if before(row[1], mark) then seen = seen + 1 else break end
    end
  end
  if not mark or not before(rows[#rows][1], mark) then
    redis.call('HSET', marks, kind, rows[#rows][1])
  end
  redis.call('PEXPIRE', marks, ttl)
  return {seen, rows}
end
"""

# KEYS: stream/marks pairs. ARGV: count, ttl_ms, start/kind pairs. Answers per pair
# {how many of the rows were sent before (-1: the key is not a stream), the rows}.
READ = READ_FN + """
local out = {}
for i = 1, #KEYS / 2 do
  out[i] = read(KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i + 1], ARGV[1], ARGV[2 * i + 2], ARGV[2])
end
return out
"""

# Logins, each in one step. KEYS: per login its user's presence, sent marks, chat stream
# and notif stream. ARGV: login channel, count, ttl_ms, then per login: node, sid, device,
# since, userinfo, and per kind (chat, notif) the MINID to trim to and where to read from
# ('' for no read). Per login: binds the user, publishes the userinfo, drops what the client
# has seen and what is too old, and answers the presence it replaced and the first
# batches read (false for a kind not read).
LOGIN = READ_FN + """
local out = {}
for i = 1, #KEYS / 4 do
  local presence, marks = KEYS[4 * i - 3], KEYS[4 * i - 2]
  local a = 3 + 9 * (i - 1)
  local old = redis.call('HMGET', presence, 'node', 'sid', 'device', 'since')
  redis.call('HSET', presence, 'node', ARGV[a + 1], 'sid', ARGV[a + 2],
             'device', ARGV[a + 3], 'since', ARGV[a + 4])
  redis.call('PUBLISH', ARGV[1], ARGV[a + 5])
  -- The marks live STORE_MAX_AGE from the login; the appends only set fields.
  redis.call('HSET', marks, 'login', ARGV[a + 4])
  redis.call('PEXPIRE', marks, ARGV[3])
  local batches = {}
  for k = 1, 2 do
    local stream = KEYS[4 * i - 2 + k]
    redis.pcall('XTRIM', stream, 'MINID', ARGV[a + 4 + 2 * k])
    local start = ARGV[a + 5 + 2 * k]
    batches[k] = start ~= '' and read(stream, marks, start, ARGV[2], k == 1 and 'chat' or 'notif',
                                      ARGV[3]) or false
  end
  out[i] = {old, batches}
end
return out
"""

# KEYS: presence per socket. ARGV: sid per socket. Drops each presence that is still that
# socket's (a newer login may have replaced it). Answers per socket 1 if it was dropped,
# else 0.
UNBIND = """
local gone = {}
for i = 1, #KEYS do
  gone[i] = 0
  if redis.call('HGET', KEYS[i], 'sid') == ARGV[i] then
    gone[i] = redis.call('DEL', KEYS[i])
  end
end
return gone
"""

# KEYS: lease. ARGV: node, ttl_ms. Renews the lease this node holds or takes a free one.
# Answers 1 if the node holds it now, 0 if another does.
HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: expected holder. Deletes the lease only if it is still that holder's.
# Answers 1 if it was deleted, 0 if not.
DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
