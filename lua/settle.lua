-- settle.lua: record the outcome of a batch of attempts, each fenced by its claim token.
--
-- An outcome whose token no longer matches (the lease expired and someone else claimed the
-- entry, or it was settled already) changes nothing: a worker that lost its lease can never
-- overwrite the state. Reads and writes are batched (one HMGET/HSET/ZADD per batch).
--
-- Needs meta.lua (prepended by src/redis/scripts.rs): the meta and member formats.
--
-- KEYS[1] due    ZSET   member (meta.lua) -> next attempt (ms)
-- KEYS[2] meta   HASH   id -> meta JSON (meta.lua)
-- KEYS[3] log    HASH   id -> attempt records, JSON objects joined by ","
-- KEYS[4] done   ZSET   id -> delivered at (ms), for retention
-- KEYS[5] dead   ZSET   id -> died at (ms)
-- KEYS[6] stats  HASH   counters
-- KEYS[7] minutes HASH  attempts of the hour that holds `now`: field "<minute of the hour>:<verdict>"
--                       -> count (the console's chart); expires 26 h after it is made
-- KEYS[8] spec   HASH   id -> spec JSON: deleted when the entry is delivered
-- ARGV[1] now (ms)
-- then 6 per outcome (at most 1000 outcomes):
--   id, token, verdict ("delivered" | "retry" | "dead"), next attempt ms (retry), reason, attempt
--   JSON; for "delivered", the attempt's summary "<status>|<latency>|<started>|<merchant>|<url>"
--   instead: the entry is then compacted (meta_delivered: no spec, no log, a small meta)
-- An id given twice in one batch is applied once (the first outcome whose token matches).
-- Returns: {head_ms or -1, then 1 (applied) or 0 (fenced off) per outcome}, or an error reply
--   (and no change at all) when the arguments are not whole outcomes or a verdict is none of
--   the three words: a typo must never read as "dead".
if (#ARGV - 1) % 6 ~= 0 then
  return redis.error_reply('ERR settle: expected 6 arguments per outcome after now, got ' .. (#ARGV - 1))
end
local n = (#ARGV - 1) / 6
local verdicts = {delivered = true, retry = true, dead = true}
for i = 1, n do
  local v = ARGV[2 + (i - 1) * 6 + 2]
  if not verdicts[v] then
    return redis.error_reply('ERR settle: unknown verdict ' .. string.format('%q', v) .. ' (use delivered, retry or dead)')
  end
end
local out = {-1}
if n > 0 then
  local ids = {}
  for i = 1, n do ids[i] = ARGV[2 + (i - 1) * 6] end
  local metas = redis.call('HMGET', KEYS[2], unpack(ids))
  local logs = redis.call('HMGET', KEYS[3], unpack(ids))
  local meta_set, log_set, due_add, due_rem, done_add, dead_add = {}, {}, {}, {}, {}, {}
  local gone = {}
  local seen = {}
  local applied_count, delivered, died = 0, 0, 0
  for i = 1, n do
    local base = 2 + (i - 1) * 6
    local id = ids[i]
    local raw = metas[i]
    local applied = 0
    if raw and not seen[id] then
      local m = meta_decode(raw)
      if meta_leased_by(m, ARGV[base + 1]) then
        seen[id] = true
        applied = 1
        applied_count = applied_count + 1
        local verdict = ARGV[base + 2]
        m.a = m.a + 1
        local node = m.o
        meta_end_lease(m)
        local compact = nil
        if verdict == 'delivered' then compact = meta_delivered(m, ARGV[1], node, ARGV[base + 5]) end
        if compact then
          gone[#gone + 1] = id
        else
          log_set[#log_set + 1] = id
          if logs[i] then
            log_set[#log_set + 1] = logs[i] .. ',' .. ARGV[base + 5]
          else
            log_set[#log_set + 1] = ARGV[base + 5]
          end
        end
        if verdict == 'retry' then
          local next_at = ARGV[base + 3]
          m.s = 'scheduled'
          m.n = next_at
          due_add[#due_add + 1] = next_at
          due_add[#due_add + 1] = m.m
        else
          due_rem[#due_rem + 1] = m.m
          m.f = ARGV[1]
          m.n = nil
          if compact then m = compact end
          if verdict == 'delivered' then
            m.s = 'delivered'
            done_add[#done_add + 1] = ARGV[1]
            done_add[#done_add + 1] = id
            delivered = delivered + 1
          else -- 'dead' (checked above)
            m.s = 'dead'
            m.r = ARGV[base + 4]
            dead_add[#dead_add + 1] = ARGV[1]
            dead_add[#dead_add + 1] = id
            died = died + 1
          end
        end
        meta_set[#meta_set + 1] = id
        meta_set[#meta_set + 1] = meta_encode(m)
      end
    end
    out[#out + 1] = applied
  end
  if #meta_set > 0 then redis.call('HSET', KEYS[2], unpack(meta_set)) end
  if #log_set > 0 then redis.call('HSET', KEYS[3], unpack(log_set)) end
  if #gone > 0 then
    redis.call('HDEL', KEYS[3], unpack(gone))
    redis.call('HDEL', KEYS[8], unpack(gone))
  end
  if #due_add > 0 then redis.call('ZADD', KEYS[1], unpack(due_add)) end
  if #due_rem > 0 then redis.call('ZREM', KEYS[1], unpack(due_rem)) end
  if #done_add > 0 then redis.call('ZADD', KEYS[4], unpack(done_add)) end
  if #dead_add > 0 then redis.call('ZADD', KEYS[5], unpack(dead_add)) end
  if applied_count > 0 then
    redis.call('HINCRBY', KEYS[6], 'delivering', -applied_count)
    redis.call('HINCRBY', KEYS[6], 'attempts', applied_count)
  end
  if delivered > 0 then redis.call('HINCRBY', KEYS[6], 'delivered', delivered) end
  if died > 0 then redis.call('HINCRBY', KEYS[6], 'dead', died) end
  if applied_count > 0 then
    local minute = math.floor(tonumber(ARGV[1]) / 60000) % 60
    local retried = applied_count - delivered - died
    if delivered > 0 then redis.call('HINCRBY', KEYS[7], minute .. ':delivered', delivered) end
    if retried > 0 then redis.call('HINCRBY', KEYS[7], minute .. ':retry', retried) end
    if died > 0 then redis.call('HINCRBY', KEYS[7], minute .. ':dead', died) end
    if redis.call('TTL', KEYS[7]) < 0 then redis.call('EXPIRE', KEYS[7], 93600) end
  end
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then out[1] = tonumber(head[2]) end
return out
