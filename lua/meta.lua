-- meta.lua: the codec of a notification's meta entry and of its due-set member.
--
-- Together with the Rust `Meta` (src/delivery/meta.rs) this is the single source of both
-- formats; a Rust unit test reads the @field and MEMBER_SEQ_WIDTH lines below and fails when
-- the two disagree. Redis scripts cannot `require`, so src/redis/scripts.rs prepends this file
-- to every script that reads or writes meta or members (the two are one chunk: everything here
-- is local, and a script's error line numbers count from the start of this file).
--
-- Meta: HASH `meta`, id -> one JSON object. Times (ms since the epoch) and tokens are strings:
-- formatting and parsing large numbers is the most expensive thing a script can do per entry.
-- Counts are JSON numbers. A field marked `?` is absent when it has no value (cjson drops nil).
--
-- @field s   string   state: "scheduled" | "delivering" | "delivered" | "dead"
-- @field m   string   the entry's due-set member, member_of(seq, id); kept for its whole life
-- @field a   number   attempts made over the notification's life (settled outcomes)
-- @field b   number   attempts made before the current round (a replay sets b = a)
-- @field st  number   stalls in the current round: leases that expired without an outcome
-- @field t   string   fencing token of the latest claim ("0" before the first claim)
-- @field o   string?  owner (node id) of the lease, while delivering
-- @field l   string?  lease expiry (ms), while delivering
-- @field d   string?  time (ms) the latest claimed attempt was due (lateness counts from it)
-- @field c   string   created (ms)
-- @field n   string?  time (ms) the next (or running) attempt is scheduled for; removed when
--                     an outcome makes the entry delivered or dead
-- @field f   string?  finished (ms): delivered at, or died at
-- @field r   string?  why it died (dead only)
-- @field h   string?  digest of the spec (16 hex digits of SHA-256, made by the enqueuer): a
--                     delivered entry keeps it instead of the spec, for idempotency
-- @field ls  string?  delivered only: when the delivering attempt started (ms)
-- @field hs  number?  delivered only: its HTTP status
-- @field lt  number?  delivered only: its latency (ms)
-- @field nd  string?  delivered only: the node that made it
-- @field mc  string?  delivered only: the merchant the spec named
-- @field u   string?  delivered only: the URL it was delivered to
--
-- A delivered entry is compacted (meta_delivered): its spec and attempt log are deleted and its
-- meta keeps only s, a, st, c, f, h and the summary fields, so what is retained for idempotency and
-- inspection is a few hundred bytes whatever the body was.
--
-- Member: ZSET `due`, "<seq>:<id>", seq the partition's sequence number in lower-case hex,
-- zero-padded to MEMBER_SEQ_WIDTH digits, so equal scores keep enqueue order. seq never holds
-- a ':', so the id is everything after the first MEMBER_SEQ_WIDTH + 1 characters.
local MEMBER_SEQ_WIDTH = 16
local MEMBER_FORMAT = '%0' .. MEMBER_SEQ_WIDTH .. 'x:%s'
local META_STATES = {scheduled = true, delivering = true, delivered = true, dead = true}

-- The member of id, enqueued with sequence number seq.
local function member_of(seq, id)
  return string.format(MEMBER_FORMAT, seq, id)
end

-- The id of a member.
local function id_of_member(member)
  return string.sub(member, MEMBER_SEQ_WIDTH + 2)
end

-- The compact meta of an entry delivered at now by node, from the delivering attempt's summary
-- "<status>|<latency ms>|<started ms>|<merchant>|<url>"; nil when summary is not one (a worker
-- of an older version sent a full attempt record: the entry is then kept whole).
local function meta_delivered(m, now, node, summary)
  local hs, lt, ls, mc, u = string.match(summary, '^(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
  if not hs then return nil end
  if mc == '' then mc = nil end
  return {s = 'delivered', a = m.a, st = m.st, c = m.c, f = now, h = m.h, ls = ls, hs = tonumber(hs),
    lt = tonumber(lt), nd = node, mc = mc, u = u}
end

-- A stored meta entry as a table (raises a script error on malformed JSON).
local function meta_decode(raw)
  return cjson.decode(raw)
end

-- The stored form of a meta table. A state outside the four is a bug in the calling script:
-- raise an error rather than store an entry no reader understands.
local function meta_encode(m)
  if not META_STATES[m.s] then
    error('meta.lua: refusing to store state ' .. tostring(m.s) .. ' for ' .. tostring(m.m))
  end
  return cjson.encode(m)
end

-- The stored meta entry of a new notification, first due at due (ms, string), created at now,
-- with the spec's digest. Formatted, not built as a table for cjson (which was the larger part
-- of enqueue.lua's cost per entry), so its values are not escaped: the caller
-- passes only JSON-safe ones, as the enqueuer does (an id of schema::validate_id's characters,
-- which Store checks before the call; times as integers; the digest in hex).
local META_NEW_FORMAT = '{"s":"scheduled","m":"%s","a":0,"b":0,"st":0,"t":"0","c":"%s","n":"%s","h":"%s"}'
local function meta_new_encoded(member, now, due, digest)
  return string.format(META_NEW_FORMAT, member, now, due, digest)
end

-- Whether the claim with this token (string) still holds the entry's lease (fencing).
local function meta_leased_by(m, token)
  return m.s == 'delivering' and m.t == token
end

-- Ends a lease: no owner, no lease expiry.
local function meta_end_lease(m)
  m.o = nil
  m.l = nil
end
