-- node_report.lua: a node's latest report for the console (roles, version, uptime, load), and
-- the removal of reports nobody has refreshed for an hour, in one step.
--
-- One key for the whole cluster: a handful of nodes, each a small JSON value, so no key grows
-- with anything but the node count, and a node that died without a word goes in an hour.
--
-- KEYS[1] reports  HASH  node id -> "<at ms>|<report JSON>" (the report as the node wrote it)
-- ARGV[1] node id
-- ARGV[2] the report, "<at ms>|<JSON>"
-- ARGV[3] now (ms)
-- ARGV[4] forget reports older than this (ms)
-- Returns: the number of stale reports removed
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local cutoff = tonumber(ARGV[3]) - tonumber(ARGV[4])
local removed = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local at = tonumber(string.match(all[i + 1], '^(%d+)|'))
  if at == nil or at < cutoff then
    redis.call('HDEL', KEYS[1], all[i])
    removed = removed + 1
  end
end
return removed
