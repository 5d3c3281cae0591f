-- Sequences a batch of updates of one stream group atomically: for each,
-- take the stream's next seq, append it to the stream's history, keep the
-- latest price / unread notification / signal state, and publish it to
-- the group's channel, so that every node fans out the same messages in
-- the same order. Every key shares the group's hash tag (KEYS[1]'s).
--
-- ARGV: prefix, channel, publish command, history length, max unread,
--       entry count, then 9 fields per entry:
--       kind (m|s|u|n), stream id, time (µs), symbol, signal type,
--       notification key, claim ("" or a claim id), flags, JSON body
--       without its closing brace.
-- flags, for a signal_update: "S" when the body lacks `symbol`, "T" when
-- it lacks `signal_type` (filled from the signal's state).
-- Returns one integer per entry: the seq, 0 for an ingest message another
-- node already took, -1 for a signal_update of an unknown signal.
local p, channel, publish = ARGV[1], ARGV[2], ARGV[3]
local window, max_unread, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
local i = 7
for e = 1, n do
  local kind, sid, t, sym, st, nk, claim, flags, body =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  i = i + 9
  local take = true
  if claim ~= '' then
    take = redis.call('SET', p .. 'claim:' .. claim, '1', 'NX', 'EX', 20)
  end
  local result = 0
  if take then
    if kind == 's' or kind == 'u' then
      local state_key = p .. 'signal'
      if kind == 'u' then
        local state = redis.call('HGET', state_key, nk)
        if not state then
          result = -1
        else
          local json_sym, old_st, old_sym = string.match(state, '^(.-)\n(.-)\n(.*)$')
          if string.find(flags, 'S', 1, true) then
            body = body .. ',"symbol":' .. json_sym
            sym = old_sym
          end
          if string.find(flags, 'T', 1, true) then
            body = body .. ',"signal_type":"' .. old_st .. '"'
            st = old_st
          end
        end
      end
      if result == 0 then
        -- The JSON form of the symbol, for completing later updates.
        local json_sym = cjson.encode(sym)
        redis.call('HSET', state_key, nk, json_sym .. '\n' .. st .. '\n' .. sym)
      end
    end
    if result == 0 then
      local seq = redis.call('INCR', p .. 'seq:' .. sid)
      local frame = body .. ',"seq":' .. seq .. '}'
      local meta = sym .. '\n' .. st .. '\n' .. nk
      redis.call('XADD', p .. 'h:' .. sid, 'MAXLEN', '~', window, seq .. '-1', 'f', frame, 'm', meta, 'k', kind)
      if kind == 'm' then
        redis.call('HSET', p .. 'latest', sym, frame)
      elseif kind == 'n' then
        local user = string.sub(sid, 3)
        local z, h = p .. 'unread:' .. user, p .. 'nf:' .. user
        redis.call('ZADD', z, seq, nk)
        redis.call('HSET', h, nk, frame)
        local extra = redis.call('ZCARD', z) - max_unread
        if extra > 0 then
          for _, old in ipairs(redis.call('ZRANGE', z, 0, extra - 1)) do
            redis.call('HDEL', h, old)
          end
          redis.call('ZREMRANGEBYRANK', z, 0, extra - 1)
        end
        redis.call('ZADD', p .. 'known:' .. user, seq, nk)
        redis.call('ZREMRANGEBYRANK', p .. 'known:' .. user, 0, -(window + 1))
      end
      redis.call(publish, channel,
        'v1\n' .. kind .. '\n' .. sid .. '\n' .. seq .. '\n' .. t .. '\n' .. meta .. '\n' .. frame)
      result = seq
    end
  end
  out[e] = result
end
return out
