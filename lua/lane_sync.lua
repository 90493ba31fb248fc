-- lane_sync.lua: one node's report on one destination (about half a second of its attempts),
-- and the destination's shared state back: how many nodes share it and its circuit breaker.
--
-- KEYS[1] lane   HASH  state (closed | open | half), open_until (ms), opened (count),
--                      win_start (ms), win_ok, win_fail (the breaker's window),
--                      limit:<node> (each node's current limit)
-- KEYS[2] nodes  ZSET  node id -> last report (ms): the nodes sending to this destination
-- ARGV[1] node id
-- ARGV[2] now (ms)
-- ARGV[3] answered attempts since the node's last report (not congestion)
-- ARGV[4] congested attempts (timeouts, connection errors, 429, 5xx)
-- ARGV[5] the half-open probe's result: "ok", "fail" or "" (none finished)
-- ARGV[6] breaker window (ms)
-- ARGV[7] breaker cooldown (ms)
-- ARGV[8] fewest attempts in the window before the breaker may open
-- ARGV[9] failure share that opens it (percent)
-- ARGV[10] the node's current concurrency limit for the destination (kept as limit:<node>)
-- Returns: {active nodes, state, open_until, event} with event "opened", "half", "closed",
--          "reopened" or "" (what this call changed)
local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 5000)
local active = redis.call('ZCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'limit:' .. ARGV[1], ARGV[10])
local l = KEYS[1]
local win_start = tonumber(redis.call('HGET', l, 'win_start') or '0')
if now - win_start > tonumber(ARGV[6]) then
  redis.call('HSET', l, 'win_start', now, 'win_ok', 0, 'win_fail', 0)
end
local ok = redis.call('HINCRBY', l, 'win_ok', ARGV[3])
local fail = redis.call('HINCRBY', l, 'win_fail', ARGV[4])
local state = redis.call('HGET', l, 'state') or 'closed'
local open_until = tonumber(redis.call('HGET', l, 'open_until') or '0')
local cooldown = tonumber(ARGV[7])
local event = ''
local function open()
  state = 'open'
  open_until = now + cooldown
  redis.call('HSET', l, 'state', 'open', 'open_until', open_until)
  redis.call('HINCRBY', l, 'opened', 1)
end
if state == 'closed' then
  local total = ok + fail
  if total >= tonumber(ARGV[8]) and fail * 100 >= tonumber(ARGV[9]) * total then
    open()
    event = 'opened'
  end
elseif state == 'open' and now >= open_until then
  state = 'half'
  redis.call('HSET', l, 'state', 'half')
  event = 'half'
end
if state == 'half' and ARGV[5] == 'ok' then
  state = 'closed'
  redis.call('HSET', l, 'state', 'closed', 'win_start', now, 'win_ok', 0, 'win_fail', 0)
  redis.call('HDEL', l, 'probe')
  event = 'closed'
elseif state == 'half' and ARGV[5] == 'fail' then
  open()
  redis.call('HDEL', l, 'probe')
  event = 'reopened'
end
redis.call('PEXPIRE', l, 86400000)
redis.call('PEXPIRE', KEYS[2], 86400000)
return {active, state, open_until, event}
