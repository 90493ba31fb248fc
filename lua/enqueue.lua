-- enqueue.lua: put new notifications on one partition's schedule, at most once per id. One
-- call takes a batch (one notification or many, all of this partition), in order.
--
-- Needs meta.lua (prepended by src/redis/scripts.rs): the meta and member formats.
--
-- KEYS[1] due    ZSET    member_of(seq, id) (meta.lua), score = next attempt time (ms)
-- KEYS[2] spec   HASH    id -> normalized spec JSON (immutable; deleted once delivered)
-- KEYS[3] meta   HASH    id -> meta JSON (meta.lua)
-- KEYS[4] seq    STRING  per-partition counter (member order for ties, fencing tokens)
-- KEYS[5] stats  HASH    counters
-- ARGV[1] now (ms)
-- ARGV[2] wake shard channel of the partition (same hash tag), SPUBLISHed to (once per call,
--         with the earliest due time) when this call puts an entry at the head of `due`
-- ARGV[3 + 4k .. 6 + 4k], for each notification k = 0, 1, …:
--         id; normalized spec JSON; first due time (ms); digest of the spec (meta.lua `h`):
--         compared when a delivered entry no longer has its spec
-- Returns: for each notification, two elements in order:
--         "created", due_ms | "exists", state | "conflict", state
local now = ARGV[1]
local out = {}
local created = 0
local earliest, earliest_member = nil, nil
for i = 3, #ARGV, 4 do
  local id, spec, due, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local existing = redis.call('HGET', KEYS[2], id)
  local raw = redis.call('HGET', KEYS[3], id)
  if existing or raw then
    local m = raw and meta_decode(raw)
    local state = (m and m.s) or 'unknown'
    local same
    if existing then
      same = existing == spec
    else
      same = m.h ~= nil and m.h == digest
    end
    out[#out + 1] = same and 'exists' or 'conflict'
    out[#out + 1] = state
  else
    local seq = redis.call('INCR', KEYS[4])
    local member = member_of(seq, id)
    redis.call('HSET', KEYS[2], id, spec)
    redis.call('HSET', KEYS[3], id, meta_encode(meta_new(member, now, due, digest)))
    redis.call('ZADD', KEYS[1], due, member)
    created = created + 1
    if earliest == nil or tonumber(due) < tonumber(earliest) then
      earliest, earliest_member = due, member
    end
    out[#out + 1] = 'created'
    out[#out + 1] = due
  end
end
if created > 0 then
  redis.call('HINCRBY', KEYS[5], 'enqueued', created)
  -- Only our earliest entry (the first of them among equal due times) can have become the head.
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  if head[1] == earliest_member then
    redis.call('SPUBLISH', ARGV[2], earliest)
  end
end
return out
