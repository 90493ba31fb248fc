-- intake_ack.lua: acknowledge and delete intake stream entries once they are on the schedule
-- (or recorded in the rejected stream), so the stream never grows without bound.
--
-- KEYS[1] intake stream
-- ARGV[1] consumer group
-- ARGV[2..] stream entry ids
-- Returns: the number of entries deleted
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
