-- enqueue.lua: put a new notification on its partition's schedule, at most once per id.
--
-- Needs meta.lua (prepended by src/redis/scripts.rs): the meta and member formats.
--
-- KEYS[1] due    ZSET    member_of(seq, id) (meta.lua), score = next attempt time (ms)
-- KEYS[2] spec   HASH    id -> normalized spec JSON (immutable; deleted once delivered)
-- KEYS[3] meta   HASH    id -> meta JSON (meta.lua)
-- KEYS[4] seq    STRING  per-partition counter (member order for ties, fencing tokens)
-- KEYS[5] stats  HASH    counters
-- ARGV[1] id
-- ARGV[2] normalized spec JSON
-- ARGV[3] first due time (ms)
-- ARGV[4] now (ms)
-- ARGV[5] wake shard channel of the partition (same hash tag), SPUBLISHed to when this entry
--         becomes the earliest one
-- ARGV[6] digest of the spec (meta.lua `h`): compared when a delivered entry no longer has its spec
-- Returns: {"created", due_ms} | {"exists", state} | {"conflict", state}
local id = ARGV[1]
local existing = redis.call('HGET', KEYS[2], id)
local raw = redis.call('HGET', KEYS[3], id)
if existing or raw then
  local m = raw and meta_decode(raw)
  local state = (m and m.s) or 'unknown'
  local same
  if existing then
    same = existing == ARGV[2]
  else
    same = m.h ~= nil and m.h == ARGV[6]
  end
  if same then
    return {'exists', state}
  end
  return {'conflict', state}
end
local seq = redis.call('INCR', KEYS[4])
local member = member_of(seq, id)
local due = ARGV[3]
redis.call('HSET', KEYS[2], id, ARGV[2])
redis.call('HSET', KEYS[3], id, meta_encode(meta_new(member, ARGV[4], due, ARGV[6])))
redis.call('ZADD', KEYS[1], due, member)
redis.call('HINCRBY', KEYS[5], 'enqueued', 1)
local head = redis.call('ZRANGE', KEYS[1], 0, 0)
if head[1] == member then
  redis.call('SPUBLISH', ARGV[5], due)
end
return {'created', due}
