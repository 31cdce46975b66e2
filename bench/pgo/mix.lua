-- bench/pgo/mix.lua: wrk's requests while bench/pgo/train trains the profile. Not the counted
-- requests (bench/profile's loadgen sends a two-line GET): browser-like heads of different
-- sizes, a query string, a conditional GET, a chunked response, POSTs with bodies.
local reqs = {}
local ua = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
init = function(args)
    reqs[1] = wrk.format("GET", "/", {
        ["Host"] = "www.example.test", ["User-Agent"] = ua,
        ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ["Accept-Language"] = "en-GB,en;q=0.5", ["Accept-Encoding"] = "gzip, deflate, br",
        ["Cookie"] = "session=3f9a1c0e77d24b8a; theme=dark", ["Upgrade-Insecure-Requests"] = "1",
    })
    reqs[2] = wrk.format("GET", "/chunked", { ["Host"] = "www.example.test", ["Accept"] = "*/*" })
    reqs[3] = wrk.format("POST", "/api/items?page=2&sort=name", {
        ["Host"] = "api.example.test", ["Content-Type"] = "application/json",
        ["Authorization"] = "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
    }, '{"name":"widget","qty":3,"tags":["a","b"]}')
    reqs[4] = wrk.format("GET", "/index.html", { ["Host"] = "www.example.test", ["User-Agent"] = "curl/8.5.0" })
    reqs[5] = wrk.format("GET", "/static/app.js?v=41", {
        ["Host"] = "www.example.test", ["User-Agent"] = ua, ["Accept"] = "*/*",
        ["If-None-Match"] = '"5f2a-61c3"', ["Referer"] = "https://www.example.test/",
        ["Sec-Fetch-Mode"] = "no-cors", ["X-Forwarded-For"] = "198.51.100.7",
    })
    reqs[6] = wrk.format("PUT", "/upload/train.bin", { ["Host"] = "files.example.test" }, string.rep("x", 6000))
    reqs[7] = wrk.format("GET", "/health", { ["Host"] = "10.0.0.1:8080" })
end
local i = 0
request = function()
    i = i % #reqs + 1
    return reqs[i]
end
