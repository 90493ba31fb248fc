-- merchant_health.lua: add one node's tally of a merchant's attempts (about a second's worth) to
-- the merchant's health, and say which operational events it caused.
--
-- KEYS[1] health  HASH  last_success, last_failure, consecutive (failed attempts since the last
--                       success), failing_since (ms), failing ("1" once merchant.failing was
--                       said), auto_disabled ("1" once merchant.disabled was said)
-- KEYS[2] minute  HASH  d (delivered), f (failed), l0..l15 (latency histogram: bucket i counts
--                       attempts under 2^i ms); expires after 65 minutes
-- KEYS[3] hour    HASH  the same per hour; expires after 25 hours
-- ARGV[1] now (ms)
-- ARGV[2] delivered in the tally, ARGV[3] failed in the tally
-- ARGV[4] time of the tally's last success (ms, "0" if none)
-- ARGV[5] failures after the tally's last success (all of them if none succeeded)
-- ARGV[6] time of the first of those failures (ms, "0" if none)
-- ARGV[7] consecutive failures at which the merchant is failing
-- ARGV[8] failing this long (ms) disables it ("0": never)
-- ARGV[9..24] the tally's latency histogram (16 buckets, as l0..l15)
-- Returns: {consecutive, failing_since or 0, event...} with events among "failing",
--          "recovered", "disabled"
local now = tonumber(ARGV[1])
for _, key in ipairs({KEYS[2], KEYS[3]}) do
  if ARGV[2] ~= '0' then redis.call('HINCRBY', key, 'd', ARGV[2]) end
  if ARGV[3] ~= '0' then redis.call('HINCRBY', key, 'f', ARGV[3]) end
  for i = 0, 15 do
    local n = ARGV[9 + i]
    if n and n ~= '0' then redis.call('HINCRBY', key, 'l' .. i, n) end
  end
end
redis.call('PEXPIRE', KEYS[2], 3900000)
redis.call('PEXPIRE', KEYS[3], 90000000)
local h = KEYS[1]
local trailing = tonumber(ARGV[5])
local consecutive
if ARGV[4] ~= '0' then
  redis.call('HSET', h, 'last_success', ARGV[4], 'consecutive', trailing)
  redis.call('HDEL', h, 'failing_since')
  consecutive = trailing
else
  consecutive = redis.call('HINCRBY', h, 'consecutive', trailing)
end
if trailing > 0 then
  redis.call('HSET', h, 'last_failure', now)
  if redis.call('HEXISTS', h, 'failing_since') == 0 then
    redis.call('HSET', h, 'failing_since', ARGV[6])
  end
end
local events = {}
local threshold = tonumber(ARGV[7])
local failing = redis.call('HGET', h, 'failing') == '1'
if consecutive >= threshold and not failing then
  redis.call('HSET', h, 'failing', '1')
  table.insert(events, 'failing')
elseif ARGV[4] ~= '0' and failing and consecutive < threshold then
  redis.call('HDEL', h, 'failing', 'auto_disabled')
  table.insert(events, 'recovered')
end
local since = tonumber(redis.call('HGET', h, 'failing_since') or '0')
local after = tonumber(ARGV[8])
if after > 0 and since > 0 and now - since >= after
    and redis.call('HGET', h, 'auto_disabled') ~= '1' then
  redis.call('HSET', h, 'auto_disabled', '1')
  table.insert(events, 'disabled')
end
local reply = {consecutive, since}
for _, e in ipairs(events) do table.insert(reply, e) end
return reply
