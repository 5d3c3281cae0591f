-- Claims an Idempotency-Key for a request: KEYS[1] the key's record,
-- ARGV[1] the request body's fingerprint, ARGV[2] the window in ms.
-- Returns the fingerprint of the request that claimed it first, or false
-- when this one just did.
local old = redis.call('GET', KEYS[1])
if old then
  return old
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
