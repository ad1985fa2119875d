-- make bench-instr: start a private nginx, count instructions per request.
local s = require("support.servers").nginx()
os.execute("sh bench/http/instructions.sh " .. s.url .. "/1k")
s.stop()
