-- claim.lua: lease a batch of due notifications to one worker.
--
-- A claim moves the entry's score to now + lease, so an entry whose worker dies comes back
-- by itself when the lease runs out. Re-claiming an expired lease is a stall, not a merchant
-- failure: it bumps the stall counter and, past the limit, moves the entry to the dead set.
--
-- KEYS[1] due    ZSET    member "<seq>:<id>" -> next attempt / lease expiry (ms)
-- KEYS[2] spec   HASH    id -> spec JSON
-- KEYS[3] meta   HASH    id -> state JSON
-- KEYS[4] seq    STRING  counter, source of fencing tokens
-- KEYS[5] dead   ZSET    id -> time it died (ms)
-- KEYS[6] stats  HASH    counters
-- ARGV[1] now (ms)
-- ARGV[2] lease (ms)
-- ARGV[3] maximum number of entries to claim
-- ARGV[4] owner (node id)
-- ARGV[5] maximum stalls before an entry goes to the dead set
-- Returns: {head_ms or -1, then per claimed entry: id, token, attempt, round_index, due_ms, spec}
--   head_ms is the earliest score left in the due set after the claim.
local now = tonumber(ARGV[1])
local lease_until = now + tonumber(ARGV[2])
local max_stalls = tonumber(ARGV[5])
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {-1}
for i = 1, #entries, 2 do
  local member = entries[i]
  local score = tonumber(entries[i + 1])
  local id = string.sub(member, 18)
  local raw = redis.call('HGET', KEYS[3], id)
  local spec = redis.call('HGET', KEYS[2], id)
  if not raw or not spec then
    redis.call('ZREM', KEYS[1], member)
  else
    local m = cjson.decode(raw)
    local claim = true
    if m.s == 'delivering' then
      m.st = m.st + 1
      if m.st > max_stalls then
        claim = false
        redis.call('ZREM', KEYS[1], member)
        redis.call('ZADD', KEYS[5], now, id)
        m.s = 'dead'
        m.r = 'stalled: the lease expired ' .. m.st .. ' times without a result (worker crashed or hung)'
        m.f = now
        m.o = nil
        m.l = nil
        redis.call('HSET', KEYS[3], id, cjson.encode(m))
        redis.call('HINCRBY', KEYS[6], 'delivering', -1)
        redis.call('HINCRBY', KEYS[6], 'dead', 1)
      end
    elseif m.s == 'scheduled' then
      redis.call('HINCRBY', KEYS[6], 'delivering', 1)
    else
      claim = false
      redis.call('ZREM', KEYS[1], member)
    end
    if claim then
      local token = redis.call('INCR', KEYS[4])
      m.s = 'delivering'
      m.t = token
      m.o = ARGV[4]
      m.l = lease_until
      m.d = score
      redis.call('HSET', KEYS[3], id, cjson.encode(m))
      redis.call('ZADD', KEYS[1], lease_until, member)
      out[#out + 1] = id
      out[#out + 1] = token
      out[#out + 1] = m.a + 1
      out[#out + 1] = m.a - m.b
      out[#out + 1] = score
      out[#out + 1] = spec
    end
  end
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then out[1] = tonumber(head[2]) end
return out
