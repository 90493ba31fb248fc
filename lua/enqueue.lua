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
-- Reads are one HMGET of meta (and one of spec, for ids already known) and writes one HSET/ZADD
-- per key for the whole batch (in slices of SLICE arguments); a new entry's meta is formatted
-- as a string (meta.lua meta_new_encoded), not encoded from a table.
-- Returns: for each notification, two elements in order:
--         "created", due_ms | "exists", state | "conflict", state
local now = ARGV[1]
local out = {}
-- The answer for an id already stored, from its meta and its spec (false once delivered).
local function answer_known(raw, existing, spec, digest)
  local m = meta_decode(raw)
  local same
  if existing then
    same = existing == spec
  else
    same = m.h ~= nil and m.h == digest
  end
  return same and 'exists' or 'conflict', m.s or 'unknown'
end
-- Wakes the partition's workers when member (due at due) has become the head of `due`.
local function wake_if_head(member, due)
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  if head[1] == member then
    redis.call('SPUBLISH', ARGV[2], due)
  end
end
-- One notification (the API's path): the same steps without the batch's tables.
if #ARGV == 6 then
  local id, spec, due, digest = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local raw = redis.call('HGET', KEYS[3], id)
  if raw then
    local kind, state = answer_known(raw, redis.call('HGET', KEYS[2], id), spec, digest)
    return {kind, state}
  end
  local member = member_of(redis.call('INCR', KEYS[4]), id)
  redis.call('HSET', KEYS[2], id, spec)
  redis.call('HSET', KEYS[3], id, meta_new_encoded(member, now, due, digest))
  redis.call('ZADD', KEYS[1], due, member)
  redis.call('HINCRBY', KEYS[5], 'enqueued', 1)
  wake_if_head(member, due)
  return {'created', due}
end
-- unpack() is limited by Lua's C stack: read and write in slices.
local SLICE = 2000
local function sliced(cmd, key, list)
  if #list == 0 then return {} end
  if #list <= SLICE then return redis.call(cmd, key, unpack(list)) end
  local got = {}
  for i = 1, #list, SLICE do
    local part = redis.call(cmd, key, unpack(list, i, math.min(i + SLICE - 1, #list)))
    if type(part) == 'table' then
      for j = 1, #part do got[#got + 1] = part[j] end
    end
  end
  return got
end
-- Read every id's meta at once, and the spec only of ids that have a meta: a spec exists only
-- while its meta does (this script writes both, settle.lua deletes the spec of a delivered
-- entry, sweep.lua deletes both). An id twice in this call is answered from `made`.
local ids = {}
for i = 3, #ARGV, 4 do ids[#ids + 1] = ARGV[i] end
local metas = sliced('HMGET', KEYS[3], ids)
local known, specs = {}, {}
for k = 1, #ids do
  if metas[k] then known[#known + 1] = ids[k] end
end
if #known > 0 then
  local got = sliced('HMGET', KEYS[2], known)
  for j = 1, #known do specs[known[j]] = got[j] end
end
local made = {}
local new = {}
for k = 1, #ids do
  local i = 3 + 4 * (k - 1)
  local id, spec = ARGV[i], ARGV[i + 1]
  local raw = metas[k]
  if made[id] then
    out[#out + 1] = made[id] == spec and 'exists' or 'conflict'
    out[#out + 1] = 'scheduled'
  elseif raw then
    local kind, state = answer_known(raw, specs[id], spec, ARGV[i + 3])
    out[#out + 1] = kind
    out[#out + 1] = state
  else
    made[id] = spec
    new[#new + 1] = i
    out[#out + 1] = 'created'
    out[#out + 1] = ARGV[i + 2]
  end
end
local created = #new
if created > 0 then
  local last = redis.call('INCRBY', KEYS[4], created)
  local spec_set, meta_set, due_add = {}, {}, {}
  local earliest, earliest_due, earliest_member = nil, nil, nil
  for j = 1, created do
    local i = new[j]
    local id, due = ARGV[i], ARGV[i + 2]
    local member = member_of(last - created + j, id)
    spec_set[2 * j - 1] = id
    spec_set[2 * j] = ARGV[i + 1]
    meta_set[2 * j - 1] = id
    meta_set[2 * j] = meta_new_encoded(member, now, due, ARGV[i + 3])
    due_add[2 * j - 1] = due
    due_add[2 * j] = member
    local d = tonumber(due)
    if earliest == nil or d < earliest then
      earliest, earliest_due, earliest_member = d, due, member
    end
  end
  sliced('HSET', KEYS[2], spec_set)
  sliced('HSET', KEYS[3], meta_set)
  sliced('ZADD', KEYS[1], due_add)
  redis.call('HINCRBY', KEYS[5], 'enqueued', created)
  -- Only our earliest entry (the first of them among equal due times) can have become the head.
  wake_if_head(earliest_member, earliest_due)
end
return out
