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
-- Reads are one HMGET per hash and writes one HSET/ZADD per key for the whole batch (in slices
-- of SLICE arguments).
-- Returns: for each notification, two elements in order:
--         "created", due_ms | "exists", state | "conflict", state
local now = ARGV[1]
local out = {}
-- Read every id's spec and meta at once; an id twice in this call is answered from `made`.
local ids = {}
for i = 3, #ARGV, 4 do ids[#ids + 1] = ARGV[i] end
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
local specs = sliced('HMGET', KEYS[2], ids)
local metas = sliced('HMGET', KEYS[3], ids)
local made = {}
local new = {}
for k = 1, #ids do
  local i = 3 + 4 * (k - 1)
  local id, spec, due, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local existing, raw = specs[k], metas[k]
  if made[id] then
    out[#out + 1] = made[id] == spec and 'exists' or 'conflict'
    out[#out + 1] = 'scheduled'
  elseif existing or raw then
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
    made[id] = spec
    new[#new + 1] = k
    out[#out + 1] = 'created'
    out[#out + 1] = due
  end
end
local created = #new
if created > 0 then
  local last = redis.call('INCRBY', KEYS[4], created)
  local spec_set, meta_set, due_add = {}, {}, {}
  local earliest, earliest_member = nil, nil
  for j = 1, created do
    local i = 3 + 4 * (new[j] - 1)
    local id, spec, due, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local member = member_of(last - created + j, id)
    spec_set[#spec_set + 1] = id
    spec_set[#spec_set + 1] = spec
    meta_set[#meta_set + 1] = id
    meta_set[#meta_set + 1] = meta_encode(meta_new(member, now, due, digest))
    due_add[#due_add + 1] = due
    due_add[#due_add + 1] = member
    if earliest == nil or tonumber(due) < tonumber(earliest) then
      earliest, earliest_member = due, member
    end
  end
  sliced('HSET', KEYS[2], spec_set)
  sliced('HSET', KEYS[3], meta_set)
  sliced('ZADD', KEYS[1], due_add)
  redis.call('HINCRBY', KEYS[5], 'enqueued', created)
  -- Only our earliest entry (the first of them among equal due times) can have become the head.
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  if head[1] == earliest_member then
    redis.call('SPUBLISH', ARGV[2], earliest)
  end
end
return out
