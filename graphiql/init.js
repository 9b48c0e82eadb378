// Mounts GraphiQL on the playground page. Served by the gateway from
// /playground/assets/ like React and GraphiQL (the UMD globals React, ReactDOM
// and GraphiQL), so that the page's CSP can be `script-src 'self'`.
//
// The gateway writes the page's defaults as JSON into
// <script type="application/json" id="playground-defaults">:
//   { "query": "...", "variables": "<JSON>", "headers": "<JSON>", "statsQuery": "...", "key": "<hash>" }
(function () {
  'use strict';

  var mount = document.getElementById('graphiql');
  var defaults = JSON.parse(document.getElementById('playground-defaults').textContent);
  // The page is served by the endpoint itself: GET shows it, POST runs queries.
  var endpoint = window.location.pathname;

  function pretty(json) {
    try {
      return JSON.stringify(JSON.parse(json), null, 2);
    } catch (e) {
      return json;
    }
  }

  // GraphiQL keeps its tabs, history and layout in localStorage and prefers
  // them to the defaults. Key that state by the defaults, so that the first
  // visit, and the first after the defaults change, opens with the example; a
  // reload keeps what the user typed. State stored for other defaults is
  // dropped. Without localStorage, state lives as long as the page.
  function storageFor(key) {
    var prefix = 'visits-gateway:' + key + ':';
    var local = null;
    try {
      local = window.localStorage;
      local.getItem(prefix);
    } catch (e) {
      local = null;
    }
    var memory = Object.create(null);
    function ownKeys() {
      var keys = [];
      if (local) {
        for (var i = 0; i < local.length; i++) {
          var k = local.key(i);
          if (k !== null && k.indexOf(prefix) === 0) keys.push(k.slice(prefix.length));
        }
      } else {
        keys = Object.keys(memory);
      }
      return keys;
    }
    if (local) {
      var stale = [];
      for (var i = 0; i < local.length; i++) {
        var k = local.key(i);
        if (k !== null && k.indexOf('visits-gateway:') === 0 && k.indexOf(prefix) !== 0) stale.push(k);
      }
      stale.forEach(function (k) { local.removeItem(k); });
    }
    return {
      getItem: function (k) {
        if (local) return local.getItem(prefix + k);
        return k in memory ? memory[k] : null;
      },
      setItem: function (k, v) {
        if (local) local.setItem(prefix + k, v);
        else memory[k] = String(v);
      },
      removeItem: function (k) {
        if (local) local.removeItem(prefix + k);
        else delete memory[k];
      },
      clear: function () {
        var self = this;
        ownKeys().forEach(function (k) { self.removeItem(k); });
      },
      get length() {
        return ownKeys().length;
      },
    };
  }

  // GraphiQL re-reads the operations in the editor only after a pause, so a
  // query pasted over the example and run at once goes out with the example's
  // operation name (NewestVisits), which the server refuses as unknown. Drop
  // an operation name that the document being sent does not define. The
  // document is parsed with graphql-js, which GraphiQL's bundle exposes as
  // GraphiQL.GraphQL; one that does not parse is sent as it is, for the
  // server to report its syntax error.
  function withDefinedOperationName(params) {
    var graphql = GraphiQL.GraphQL;
    if (!params.operationName || !graphql || typeof params.query !== 'string') return params;
    var ast;
    try {
      ast = graphql.parse(params.query);
    } catch (e) {
      return params;
    }
    var defined = ast.definitions.some(function (definition) {
      return (
        definition.kind === graphql.Kind.OPERATION_DEFINITION &&
        definition.name != null &&
        definition.name.value === params.operationName
      );
    });
    if (defined) return params;
    var sent = Object.assign({}, params);
    delete sent.operationName;
    return sent;
  }

  // Subscriptions go over WebSocket (graphql-transport-ws) to the same path,
  // through the graphql-ws client in GraphiQL's bundle; the headers editor's
  // headers become the connection_init payload (its Authorization entry).
  var subscriptionUrl =
    (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host + endpoint;
  var wsFetcher = GraphiQL.createFetcher({ url: endpoint, subscriptionUrl: subscriptionUrl });

  function isSubscription(params) {
    var graphql = GraphiQL.GraphQL;
    if (!graphql || typeof params.query !== 'string') return false;
    try {
      return graphql.parse(params.query).definitions.some(function (definition) {
        return (
          definition.kind === graphql.Kind.OPERATION_DEFINITION &&
          definition.operation === 'subscription' &&
          (!params.operationName || (definition.name && definition.name.value === params.operationName))
        );
      });
    } catch (e) {
      return false;
    }
  }

  // POSTs the operation as JSON, with the headers from the headers editor.
  // A body that is not JSON (a proxy's error page, say) becomes a GraphQL
  // error, so that the result pane shows what happened.
  function fetcher(params, options) {
    if (isSubscription(params)) return wsFetcher(withDefinedOperationName(params), options);
    var headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
    var extra = (options && options.headers) || {};
    Object.keys(extra).forEach(function (name) {
      headers[name] = String(extra[name]);
    });
    return fetch(endpoint, {
      method: 'POST',
      headers: headers,
      body: JSON.stringify(withDefinedOperationName(params)),
      credentials: 'same-origin',
    }).then(function (response) {
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (e) {
          return {
            errors: [{ message: 'HTTP ' + response.status + ' ' + response.statusText + ': ' + text }],
          };
        }
      });
    });
  }

  var variables = pretty(defaults.variables);
  var headers = pretty(defaults.headers);
  var storage = storageFor(defaults.key);
  var props = {
    fetcher: fetcher,
    storage: storage,
    defaultTabs: [
      { query: defaults.query, variables: variables, headers: headers },
      // The statistics example: a second tab, whose query needs no variables.
      { query: defaults.statsQuery, headers: headers },
    ],
    defaultQuery: defaults.query,
    // Headers are not persisted (they may hold an API key): every visit
    // starts with these.
    defaultHeaders: headers,
    shouldPersistHeaders: false,
    defaultEditorToolsVisibility: 'variables',
  };
  // GraphiQL 4 fills the variables editor from the `variables` prop or from
  // storage, never from defaultTabs. So pass the example's variables on a
  // first visit only; later visits restore what the user left there.
  if (storage.getItem('graphiql:tabState') === null) {
    props.variables = variables;
  }
  ReactDOM.createRoot(mount).render(React.createElement(GraphiQL, props));
})();
