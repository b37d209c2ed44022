# Argument checks: tool.echo only with a short message free of secrets-looking words;
# tool.shell never.
package autonomy

default allow := false

max_len := 64

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

reason := "tool.echo needs params.message as a string" if {
	input.kind == "tool.echo"
	not is_string(input.params.message)
}

reason := sprintf("params.message is longer than %d characters", [max_len]) if {
	input.kind == "tool.echo"
	is_string(input.params.message)
	count(input.params.message) > max_len
}

reason := "params.message looks like it carries a secret" if {
	input.kind == "tool.echo"
	is_string(input.params.message)
	count(input.params.message) <= max_len
	forbidden_word
}

reason := "tool.shell is always blocked by policy" if input.kind == "tool.shell"

reason := sprintf("kind %q is not allowed by this policy", [input.kind]) if {
	not input.kind in {"tool.echo", "tool.shell"}
}
