-- ARGV: prefix, channel, publish command, history length, max unread,
-- entry count, then publish.lua's 9 fields per entry, then one id per entry
-- ("" for an entry without one), then the records' lifetime in ms.
-- Returns two integers per entry: publish.lua's result for it (its first
-- result when its id was already recorded, or named twice in this call)
-- and 1 when that result is a replay, else 0.
local function publish_group(ARGV)
%PUBLISH%
end
local p, n = ARGV[1], tonumber(ARGV[6])
local ids = 7 + 9 * n
local ttl = ARGV[ids + n]
-- publish.lua's arguments: its head, then this group as its one section.
local fresh = {ARGV[3], ARGV[4], ARGV[5], 1, ARGV[1], ARGV[2], 0}
local taken, result, seen, first = {}, {}, {}, {}
for e = 1, n do
  local id = ARGV[ids + e - 1]
  if id ~= '' and first[id] then
    seen[e] = first[id]
  else
    local prior = false
    if id ~= '' then
      first[id] = e
      prior = redis.call('GET', p .. 'pid:' .. id)
    end
    if prior then
      result[e], seen[e] = tonumber(prior), true
    else
      local at = 7 + 9 * (e - 1)
      for k = 0, 8 do
        fresh[#fresh + 1] = ARGV[at + k]
      end
      taken[#taken + 1] = e
    end
  end
end
if #taken > 0 then
  fresh[7] = #taken
  local out = publish_group(fresh)
  for k, e in ipairs(taken) do
    result[e] = out[k]
    local id = ARGV[ids + e - 1]
    if id ~= '' then
      redis.call('SET', p .. 'pid:' .. id, out[k], 'PX', ttl)
    end
  end
end
local reply = {}
for e = 1, n do
  local s = seen[e]
  if type(s) == 'number' then
    reply[2 * e - 1], reply[2 * e] = result[s], 1
  else
    reply[2 * e - 1], reply[2 * e] = result[e], s and 1 or 0
  end
end
return reply
