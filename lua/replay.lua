-- replay.lua: move dead notifications back to the due set for a fresh round of the schedule.
--
-- Needs meta.lua (prepended by src/redis/scripts.rs): the meta and member formats.
--
-- KEYS[1] due    ZSET   member (meta.lua) -> next attempt (ms)
-- KEYS[2] meta   HASH   id -> meta JSON (meta.lua)
-- KEYS[3] dead   ZSET   id -> died at (ms)
-- ARGV[1] now (ms)
-- ARGV[2] wake shard channel of the partition (same hash tag), SPUBLISHed to
-- ARGV[3] "ids" followed by ids, or "oldest" followed by a count (replays the oldest dead entries)
-- Returns: the ids replayed
local ids = {}
if ARGV[3] == 'oldest' then
  ids = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[4]) - 1)
else
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[2], id)
  if raw and redis.call('ZREM', KEYS[3], id) == 1 then
    local m = meta_decode(raw)
    m.s = 'scheduled'
    m.b = m.a
    m.st = 0
    m.n = ARGV[1]
    m.r = nil
    m.f = nil
    redis.call('ZADD', KEYS[1], ARGV[1], m.m)
    redis.call('HSET', KEYS[2], id, meta_encode(m))
    out[#out + 1] = id
  end
end
if #out > 0 then redis.call('SPUBLISH', ARGV[2], ARGV[1]) end
return out
