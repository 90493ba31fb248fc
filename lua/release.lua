-- release.lua: hand leased notifications back to the due set without counting an attempt
-- (a node draining on shutdown, or a destination at its concurrency limit).
--
-- Needs meta.lua (prepended by src/redis/scripts.rs): the meta and member formats.
--
-- KEYS[1] due    ZSET   member (meta.lua) -> next attempt (ms)
-- KEYS[2] meta   HASH   id -> meta JSON (meta.lua)
-- KEYS[3] stats  HASH   counters
-- ARGV[1] wake shard channel of the partition (same hash tag), SPUBLISHed to when a released
--         entry becomes the earliest one
-- then 3 per entry: id, token, time it is due again (ms)
-- Returns: the number of entries released (entries whose token no longer matches are skipped)
local released = 0
local earliest = nil
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[2], id)
  if raw then
    local m = meta_decode(raw)
    if meta_leased_by(m, ARGV[i + 1]) then
      local at = tonumber(ARGV[i + 2])
      m.s = 'scheduled'
      m.n = ARGV[i + 2]
      meta_end_lease(m)
      redis.call('ZADD', KEYS[1], ARGV[i + 2], m.m)
      redis.call('HSET', KEYS[2], id, meta_encode(m))
      redis.call('HINCRBY', KEYS[3], 'delivering', -1)
      released = released + 1
      if earliest == nil or at < earliest then earliest = at end
    end
  end
end
if earliest then
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if head[2] and tonumber(head[2]) >= earliest then
    redis.call('SPUBLISH', ARGV[1], earliest)
  end
end
return released
