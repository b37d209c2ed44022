# Argument checks: tool.echo only with a short message free of secrets-looking words;
# tool.shell never.
package autonomy

# METADATA
# custom: {id: ARGS-DEFAULT-DENY}
default allow := false

max_len := 64

# METADATA
# custom: {id: ARGS-ECHO}
allow if {
	input.kind == "tool.echo"
	is_string(input.params.message)
	count(input.params.message) <= max_len
	not forbidden_word
}

forbidden_word if {
	some w in ["password", "secret", "token"]
	contains(lower(input.params.message), w)
}

# METADATA
# custom: {id: ARGS-ECHO-NOT-STRING}
reason := "tool.echo needs params.message as a string" if {
	input.kind == "tool.echo"
	not is_string(input.params.message)
}

# METADATA
# custom: {id: ARGS-ECHO-TOO-LONG}
reason := sprintf("params.message is longer than %d characters", [max_len]) if {
	input.kind == "tool.echo"
	is_string(input.params.message)
	count(input.params.message) > max_len
}

# METADATA
# custom: {id: ARGS-ECHO-SECRET}
reason := "params.message looks like it carries a secret" if {
	input.kind == "tool.echo"
	is_string(input.params.message)
	count(input.params.message) <= max_len
	forbidden_word
}

# METADATA
# custom: {id: ARGS-SHELL}
reason := "tool.shell is always blocked by policy" if input.kind == "tool.shell"

# METADATA
# custom: {id: ARGS-OTHER-KIND}
reason := sprintf("kind %q is not allowed by this policy", [input.kind]) if {
	not input.kind in {"tool.echo", "tool.shell"}
}
