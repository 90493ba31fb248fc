-- merchant_put.lua: create or change one merchant's record, compare-and-set on its version, so
-- two operators (or nodes) changing a merchant at once cannot lose one of the changes.
--
-- KEYS[1] merchant  HASH  doc (merchant JSON, no secret values), sealed (AEAD ciphertext of
--                         its secrets), version (integer, 1 on create)
-- ARGV[1] the version the change was made against; "0" creates (the record must not exist)
-- ARGV[2] the new merchant JSON
-- ARGV[3] the new sealed secrets
-- Returns: {"ok", new version} | {"exists"} (create, but it is there) | {"missing"} (change,
--          but it is gone) | {"conflict", current version} (changed meanwhile: read and retry)
local current = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '0' then
  if current then return {'exists'} end
elseif not current then
  return {'missing'}
elseif current ~= ARGV[1] then
  return {'conflict', current}
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'sealed', ARGV[3])
return {'ok', version}
