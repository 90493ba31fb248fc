-- publish.lua: store an order's latest result and announce it, with a per-order sequence number.
--
-- Storing and publishing in one script means a subscriber that subscribes first and then reads
-- the stored result sees every result at least once, and the sequence number lets it drop the
-- second copy.
--
-- KEYS[1] result  HASH  {seq, result}: the order's latest result, expires after the TTL
-- ARGV[1] result JSON {"order_id", "status", "data", "published_at"}
-- ARGV[2] time to live (seconds)
-- ARGV[3] shard channel of the order (same hash tag as KEYS[1]), SPUBLISHed to
-- Returns: the result's sequence number (1 for the first result of the order)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'result', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SPUBLISH', ARGV[3], seq .. ' ' .. ARGV[1])
return seq
