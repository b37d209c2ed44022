# Domain allowlist for tool.http_get, plus tool.echo.
# The hosts come from data.json (data.http.hosts); the runtime's own --allowed-domains list
# still applies after the policy allows (both must agree).
package autonomy

# METADATA
# custom: {id: HTTP-DEFAULT-DENY}
default allow := false

# The host of params.endpoint: "https://api.example.com:8443/x?y" -> "api.example.com".
endpoint_host := host if {
	parts := split(input.params.endpoint, "/")
	count(parts) >= 3
	host := lower(split(parts[2], ":")[0])
}

# METADATA
# custom: {id: HTTP-ECHO}
allow if input.kind == "tool.echo"

# METADATA
# custom: {id: HTTP-ALLOWLIST}
allow if {
	input.kind == "tool.http_get"
	startswith(input.params.endpoint, "https://")
	endpoint_host in data.http.hosts
}

# METADATA
# custom: {id: HTTP-NOT-ALLOWED}
reason := sprintf("http_get to %q is not in the policy's allowlist", [endpoint_host]) if {
	input.kind == "tool.http_get"
	not allow
	endpoint_host
}

# METADATA
# custom: {id: HTTP-BAD-ENDPOINT}
reason := "http_get needs params.endpoint as an https:// URL" if {
	input.kind == "tool.http_get"
	not endpoint_host
}

# METADATA
# custom: {id: HTTP-OTHER-KIND}
reason := sprintf("kind %q is not allowed by this policy", [input.kind]) if {
	not input.kind in {"tool.echo", "tool.http_get"}
}
