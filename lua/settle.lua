-- settle.lua: record the outcome of a batch of attempts, each fenced by its claim token.
--
-- An outcome whose token no longer matches (the lease expired and someone else claimed the
-- entry, or it was settled already) changes nothing: a worker that lost its lease can never
-- overwrite the state.
--
-- KEYS[1] due    ZSET   member -> next attempt (ms)
-- KEYS[2] meta   HASH   id -> state JSON
-- KEYS[3] log    HASH   id -> attempt records, JSON objects joined by ","
-- KEYS[4] done   ZSET   id -> delivered at (ms), for retention
-- KEYS[5] dead   ZSET   id -> died at (ms)
-- KEYS[6] stats  HASH   counters
-- ARGV[1] now (ms)
-- then 6 per outcome:
--   id, token, verdict ("delivered" | "retry" | "dead"), next attempt ms (retry), reason, attempt JSON
-- Returns: {head_ms or -1, then 1 (applied) or 0 (fenced off) per outcome}
local now = tonumber(ARGV[1])
local out = {-1}
for i = 2, #ARGV, 6 do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[2], id)
  local applied = 0
  if raw then
    local m = cjson.decode(raw)
    if m.s == 'delivering' and tostring(m.t) == ARGV[i + 1] then
      applied = 1
      local verdict = ARGV[i + 2]
      local log = redis.call('HGET', KEYS[3], id)
      if log then
        redis.call('HSET', KEYS[3], id, log .. ',' .. ARGV[i + 5])
      else
        redis.call('HSET', KEYS[3], id, ARGV[i + 5])
      end
      m.a = m.a + 1
      m.o = nil
      m.l = nil
      redis.call('HINCRBY', KEYS[6], 'delivering', -1)
      redis.call('HINCRBY', KEYS[6], 'attempts', 1)
      if verdict == 'retry' then
        local next_at = tonumber(ARGV[i + 3])
        m.s = 'scheduled'
        m.n = next_at
        redis.call('ZADD', KEYS[1], next_at, m.m)
      else
        redis.call('ZREM', KEYS[1], m.m)
        m.f = now
        m.n = nil
        if verdict == 'delivered' then
          m.s = 'delivered'
          redis.call('ZADD', KEYS[4], now, id)
          redis.call('HINCRBY', KEYS[6], 'delivered', 1)
        else
          m.s = 'dead'
          m.r = ARGV[i + 4]
          redis.call('ZADD', KEYS[5], now, id)
          redis.call('HINCRBY', KEYS[6], 'dead', 1)
        end
      end
      redis.call('HSET', KEYS[2], id, cjson.encode(m))
    end
  end
  out[#out + 1] = applied
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then out[1] = tonumber(head[2]) end
return out
