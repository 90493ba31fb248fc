-- merchant_delete.lua: remove one merchant's record (its pending notifications then die at
-- their next attempt, naming the merchant; a merchant made again with the same id can replay
-- them).
--
-- KEYS[1] merchant  HASH  the record (merchant_put.lua)
-- Returns: 1 if it was there, else 0
return redis.call('DEL', KEYS[1])
