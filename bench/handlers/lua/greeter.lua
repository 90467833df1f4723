-- The Greeter as a Lua script handler: the same reply as ../reply/helloworld.json,
-- so the "hello" scenario measures the cost of calling into Lua.
function SayHello(req, ctx)
  return { message = "Hello, " .. req.name .. "!" }
end

function SayHelloAgain(req, ctx)
  return { message = "Hello, " .. req.name .. "!" }
end
