-- claim.lua: lease a batch of due notifications to one worker.
--
-- A claim moves the entry's score to now + lease, so an entry whose worker dies comes back
-- by itself when the lease runs out. Re-claiming an expired lease is a stall, not a merchant
-- failure: it bumps the stall counter and, past the limit, moves the entry to the dead set.
-- Reads and writes are batched (one HMGET/HSET/ZADD per batch, not per entry).
--
-- Needs meta.lua (prepended by src/redis/scripts.rs): the meta and member formats.
--
-- KEYS[1] due    ZSET    member (meta.lua) -> next attempt / lease expiry (ms)
-- KEYS[2] spec   HASH    id -> spec JSON
-- KEYS[3] meta   HASH    id -> meta JSON (meta.lua)
-- KEYS[4] seq    STRING  counter, source of fencing tokens
-- KEYS[5] dead   ZSET    id -> time it died (ms)
-- KEYS[6] stats  HASH    counters
-- ARGV[1] now (ms)
-- ARGV[2] lease (ms)
-- ARGV[3] maximum number of entries to claim (at most 1000)
-- ARGV[4] owner (node id)
-- ARGV[5] maximum stalls before an entry goes to the dead set
-- ARGV[6] horizon (ms, optional, default ARGV[1]): claim entries scored up to it. Above now, the
--         worker prefetches entries falling due soon and holds them until due; below now, it
--         takes only entries overdue by now - horizon (helping with a partition it does not own).
-- Returns: {head_ms or -1, then per claimed entry: id, token, attempt, round_index, due_ms, spec}
--   due_ms is when the attempt was scheduled (a stall re-claim keeps the original due time).
--   head_ms is the earliest score left in the due set after the claim.
-- Times in meta are kept as strings (see meta.lua).
local now = tonumber(ARGV[1])
local lease_until = string.format('%d', now + tonumber(ARGV[2]))
local max_stalls = tonumber(ARGV[5])
local horizon = ARGV[6] or ARGV[1]
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {-1}
local n = #entries / 2
if n > 0 then
  local ids = {}
  for i = 1, n do ids[i] = id_of_member(entries[2 * i - 1]) end
  local metas = redis.call('HMGET', KEYS[3], unpack(ids))
  local specs = redis.call('HMGET', KEYS[2], unpack(ids))
  local last_token = redis.call('INCRBY', KEYS[4], n)
  local meta_set, lease_add, due_rem, dead_add = {}, {}, {}, {}
  local started, died = 0, 0
  for i = 1, n do
    local id, member, score = ids[i], entries[2 * i - 1], entries[2 * i]
    local raw, spec = metas[i], specs[i]
    if not raw or not spec then
      due_rem[#due_rem + 1] = member
    else
      local m = meta_decode(raw)
      local claim = true
      if m.s == 'delivering' then
        m.st = m.st + 1
        if m.st > max_stalls then
          claim = false
          due_rem[#due_rem + 1] = member
          dead_add[#dead_add + 1] = ARGV[1]
          dead_add[#dead_add + 1] = id
          m.s = 'dead'
          m.r = 'stalled: the lease expired ' .. m.st .. ' times without a result (worker crashed or hung)'
          m.f = ARGV[1]
          meta_end_lease(m)
          meta_set[#meta_set + 1] = id
          meta_set[#meta_set + 1] = meta_encode(m)
          died = died + 1
        end
      elseif m.s == 'scheduled' then
        started = started + 1
      else
        claim = false
        due_rem[#due_rem + 1] = member
      end
      if claim then
        local token = last_token - n + i
        m.s = 'delivering'
        m.t = string.format('%d', token)
        m.o = ARGV[4]
        m.l = lease_until
        -- The attempt was due when it was scheduled (m.n), also on a stall re-claim, where
        -- the score is the expired lease: lateness counts from the schedule, not the lease.
        local due = m.n or score
        -- The score is the schedule's authority: an entry scored earlier than m.n (moved by
        -- an operator) is due at its score.
        if tonumber(score) < tonumber(due) then due = score end
        m.d = due
        meta_set[#meta_set + 1] = id
        meta_set[#meta_set + 1] = meta_encode(m)
        lease_add[#lease_add + 1] = lease_until
        lease_add[#lease_add + 1] = member
        out[#out + 1] = id
        out[#out + 1] = token
        out[#out + 1] = m.a + 1
        out[#out + 1] = m.a - m.b
        out[#out + 1] = due
        out[#out + 1] = spec
      end
    end
  end
  if #meta_set > 0 then redis.call('HSET', KEYS[3], unpack(meta_set)) end
  if #lease_add > 0 then redis.call('ZADD', KEYS[1], unpack(lease_add)) end
  if #due_rem > 0 then redis.call('ZREM', KEYS[1], unpack(due_rem)) end
  if #dead_add > 0 then redis.call('ZADD', KEYS[5], unpack(dead_add)) end
  if started ~= died then redis.call('HINCRBY', KEYS[6], 'delivering', started - died) end
  if died > 0 then redis.call('HINCRBY', KEYS[6], 'dead', died) end
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then out[1] = tonumber(head[2]) end
return out
